"""One production monitor run of one model (``canary_monitor``'s drift task, ``pipeline monitor <model>``).

1. The window: the captured requests since the previous run of this model (the registry's ``monitor_runs``), the
   newest ``monitoring.window_requests`` of them (:mod:`.window`).
2. The reference: production's stable version's training snapshot (:mod:`.reference`).
3. The tests (:mod:`.divergence`), the GX expectations (:mod:`.expectations`), the report (:mod:`.report`).
4. The record: one ``monitor_runs`` row with every figure and the report's path.
5. What follows: ``monitoring.sustained_windows`` drifted windows in a row, or a significant live accuracy drop,
   raise the alarm on the run where they first do (the caller alerts: the Airflow task fails with the reasons and
   the ``drift`` notifiers send them; the CLI exits non-zero). While the drift or the drop lasts and
   ``monitoring.retrain_on_drift`` is on, every run hands the labelled live requests to the ingest
   (:func:`ingest_live_labels`), which appends them as a data version and, once there are enough, starts a
   retrain through the model's raw-data Asset.

A window with fewer than ``monitoring.min_requests`` requests gets no verdict; it neither extends nor ends a
streak of drifted windows.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import ModelConfig
from pipeline.errors import NotFound, PipelineError, ValidationFailed
from pipeline.monitoring.divergence import (
    DistributionTest,
    WindowVerdict,
    accuracy_test,
    distribution_test,
    judge_window,
)
from pipeline.monitoring.features import OTHER_TOKEN, features_of, token_counts
from pipeline.monitoring.reference import Reference, build_reference
from pipeline.monitoring.report import report_dir, write_report
from pipeline.monitoring.window import LiveWindow, read_window
from pipeline.release.registry import MonitorRun, Registry
from pipeline.settings import Paths

log = logging.getLogger(__name__)

OK, DRIFT, ALARM, NO_VERDICT = "ok", "drift", "alarm", "no_verdict"
_HISTORY_PLOTTED = 30
# A window ends this long before the run: a request the proxy received just before is still on its way through
# the capture service's queue, and the next window (which starts where this one ended) will see it.
_SETTLE_S = 10.0
Retrain = Callable[[str], Any]


class DriftAlarm(ValidationFailed):
    """Sustained drift or a live accuracy drop: the run is recorded; the message is its summary and reasons."""


def _clock() -> float:
    return time.time()


def ingest_live_labels(model: str, paths: Paths | None = None, config: ModelConfig | None = None) -> Any:
    """Hand the labelled live requests of ``model`` to the ingest (:mod:`pipeline.data.landing`), which appends
    them as a new data version and, past its threshold, emits the model's raw-data Asset (a retrain)."""
    from pipeline.data.landing import ingest_live_labels as ingest  # GX and the store: only when it acts

    return ingest(model, paths=paths, config=config)


@dataclass
class MonitorOutcome:
    """What one run found and did."""

    run: MonitorRun
    verdict: WindowVerdict | None
    alarm: bool
    reasons: list[str] = field(default_factory=list)
    retrain: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.run.model, "version": self.run.version, "run_id": self.run.run_id,
                "decision": self.run.decision, "alarm": self.alarm, "streak": self.run.streak,
                "requests": self.run.requests, "labelled": self.run.labelled, "reasons": self.reasons,
                "summary": self.run.summary, "report": self.run.report, "retrain": _json_safe(self.retrain)}


def run_monitor(config: ModelConfig, run_id: str, registry: Registry, paths: Paths, now: float | None = None,
                retrain: Retrain | None = None, expectations: bool = True) -> MonitorOutcome:
    """One monitor run of ``config.name`` (see the module docstring); ``now``: where the window ends (default: a
    few seconds ago, so that captures still in flight fall into the next window rather than none)."""
    model, settings = config.name, config.monitoring
    until = _clock() - _SETTLE_S if now is None else now
    previous = next(iter(registry.monitor_runs(model, limit=1)), None)
    since = previous.window_until if previous is not None else None
    version = registry.stable_version(model)
    record = registry.get_version(model, version) if version is not None else None
    window = read_window(model, since, until, settings.window_requests, paths)
    facts: dict[str, Any] = {"stable version": version, "window": _window_text(window),
                             "requests": window.requests, "instances read": len(window.instances),
                             "labelled": len(window.labelled), **{f"skipped ({k})": v for k, v in
                                                                  window.skipped.items()}}
    try:
        reference = build_reference(model, record, paths, settings)
    except NotFound as exc:  # nothing stable, or its snapshot is gone: the run says so and judges nothing
        summary = f"{model}: no verdict: {exc}" if record is not None else f"{model}: no verdict: nothing stable"
        run = _record(registry, model, version, run_id, window, NO_VERDICT, None, 0, {"facts": facts}, None,
                      summary)
        return MonitorOutcome(run, None, False, [summary])
    facts.update({"reference": f"snapshot {reference.snapshot[:12]}, {reference.size} training examples",
                  "reference predictions": reference.prediction_source})
    verdict, window_features = judge(reference, window, config)
    same_version = previous is not None and previous.version == version
    streak = next_streak(verdict, previous.streak if same_version and previous is not None else 0)
    accuracy_before = same_version and previous is not None and previous.accuracy_dropped
    alarm = raises_alarm(verdict, streak, settings.sustained_windows, accuracy_before)
    acting = verdict.drifted and streak >= settings.sustained_windows or verdict.accuracy_dropped
    decision = NO_VERDICT if not verdict.judged else ALARM if alarm else DRIFT if (
        verdict.drifted or verdict.accuracy_dropped) else OK
    reasons = verdict.reasons()
    figures: dict[str, Any] = {"facts": facts, "verdict": verdict.as_dict(), "class_names": reference.class_names,
                               "thresholds": settings.model_dump()}
    if expectations and verdict.judged:
        figures.update(_expectations(reference, window_features, config))
    if acting and settings.retrain_on_drift:
        ingest = retrain or (lambda name: ingest_live_labels(name, paths=paths, config=config))
        figures["retrain"] = _retrain(ingest, model)
    summary = _summary(model, version, decision, streak, settings.sustained_windows, verdict, reasons)
    directory = report_dir(paths, model, run_id)
    history = registry.monitor_runs(model, limit=_HISTORY_PLOTTED - 1)
    try:
        page = write_report(directory, f"{model}: production monitor, run {run_id}", summary, figures,
                            reference.features, window_features, history)
        report = str(page.relative_to(paths.home))
    except (OSError, ValueError) as exc:  # a report that cannot be written must not lose the run's figures
        log.error("%s: the monitor report could not be written: %s", model, exc)
        report = None
    run = _record(registry, model, version, run_id, window, decision, verdict, streak, figures, report, summary)
    log.info("%s", summary)
    return MonitorOutcome(run, verdict, alarm, reasons, figures.get("retrain"))


def judge(reference: Reference, window: LiveWindow, config: ModelConfig) -> tuple[WindowVerdict, dict[str, Any]]:
    """Every test of one window against the reference (what each run decides on; ``bench/drift.py`` too), and
    the window's features."""
    settings = config.monitoring
    window_features = features_of(reference.kind, window.instances, reference.vocabulary) if window.instances else {}
    accuracy = accuracy_test(window.correct, len(window.labelled), reference.expected_accuracy, settings)
    verdict = judge_window(reference.features, window_features, _distribution_tests(reference, window, config),
                           accuracy, len(window.instances), settings)
    return verdict, window_features


def _distribution_tests(reference: Reference, window: LiveWindow, config: ModelConfig) -> list[DistributionTest]:
    settings = config.monitoring
    tests = [distribution_test("predicted classes", window.predicted_counts(), reference.prediction_shares,
                               settings.max_prediction_js, settings.alpha)]
    if reference.kind == "text" and reference.token_shares:
        kept = [token for token in reference.token_shares if token != OTHER_TOKEN]
        tests.append(distribution_test("tokens", token_counts((str(t) for t in window.instances), kept),
                                       reference.token_shares, settings.max_token_js, settings.alpha))
    return tests


def next_streak(verdict: WindowVerdict, previous: int) -> int:
    """Drifted windows in a row: one more on drift, back to 0 on a clean window, unchanged without a verdict."""
    if not verdict.judged:
        return previous
    return previous + 1 if verdict.drifted else 0


def raises_alarm(verdict: WindowVerdict, streak: int, sustained: int, accuracy_dropped_before: bool) -> bool:
    """The alarm, on the run where it first holds: the streak reaches ``sustained``, or the accuracy drops."""
    return (verdict.drifted and streak == sustained) or (verdict.accuracy_dropped and not accuracy_dropped_before)


def _expectations(reference: Reference, window_features: dict[str, Any], config: ModelConfig) -> dict[str, Any]:
    from pipeline.monitoring.expectations import as_dicts, run_suite

    try:
        return {"expectations": as_dicts(run_suite(reference.features, window_features, config.monitoring))}
    except Exception as exc:  # noqa: BLE001 - GX failing must not cost the run its statistical verdict
        log.error("%s: the GX expectations could not run: %s: %s", config.name, type(exc).__name__, exc)
        return {"expectations": [], "expectations_error": f"{type(exc).__name__}: {exc}"}


def _retrain(retrain: Retrain, model: str) -> dict[str, Any]:
    """Call the ingest; its answer, or its error (the run and its alert go on either way)."""
    try:
        return {"called": True, "result": _json_safe(retrain(model))}
    except PipelineError as exc:
        log.warning("%s: the ingest of labelled live requests refused: %s", model, exc)
        return {"called": True, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a broken ingest is reported in the run, never hides the drift
        log.exception("%s: the ingest of labelled live requests failed", model)
        return {"called": True, "error": f"{type(exc).__name__}: {exc}"}


def _summary(model: str, version: int | None, decision: str, streak: int, sustained: int,
             verdict: WindowVerdict, reasons: list[str]) -> str:
    head = f"{model} stable {version}: {decision}"
    if not verdict.judged:
        return f"{head}: {verdict.requests} instances in the window, too few to judge"
    figures = f"{verdict.requests} instances, drifted windows in a row {streak}/{sustained}"
    return f"{head} ({figures})" + (f": {'; '.join(reasons)}" if reasons else "")


def _window_text(window: LiveWindow) -> str:
    def when(at: float | None) -> str:
        return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))

    return f"{when(window.first_at)} .. {when(window.last_at)} (since {when(window.since)})"


def _record(registry: Registry, model: str, version: int | None, run_id: str, window: LiveWindow, decision: str,
            verdict: WindowVerdict | None, streak: int, figures: dict[str, Any], report: str | None,
            summary: str) -> MonitorRun:
    return registry.record_monitor_run({
        "model": model, "version": version, "run_id": run_id, "window_since": window.since,
        "window_until": window.until, "requests": window.requests, "labelled": len(window.labelled),
        "decision": decision, "drifted": bool(verdict is not None and verdict.drifted),
        "accuracy_dropped": bool(verdict is not None and verdict.accuracy_dropped), "streak": streak,
        "figures": _json_safe(figures), "report": report, "summary": summary})


def _json_safe(value: Any) -> Any:
    """Plain JSON values: numpy scalars to Python, NaN/inf to None, tuples to lists."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _json_safe(item())
    if hasattr(value, "as_dict"):
        return _json_safe(value.as_dict())
    return str(value)
