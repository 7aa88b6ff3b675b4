"""``pipeline status``: versions on disk, what each server serves, labels, and the registry's history."""

from __future__ import annotations

from typing import Any

from pipeline.errors import NotFound, PipelineError
from pipeline.live.endpoints import CANARY_INSTANCE
from pipeline.release.context import PRODUCTION, STAGING, Release
from pipeline.release.serving_state import served_state
from pipeline.serving.client import ServingClient
from pipeline.wire.version_dirs import list_versions

_DEFAULT_HISTORY = 8


def _server_view(release: Release, instance: str) -> dict[str, Any]:
    """What an instance's models.config pins, and what the server says of each version."""
    backend = release.backend(instance)
    state = served_state(backend, release.model)
    view: dict[str, Any] = {"versions": list(state.versions), "labels": state.labels, "running": backend.is_running()}
    if view["running"] and state.versions:
        with ServingClient.for_endpoint(backend.endpoint(), timeout_s=2.0) as client:
            try:
                view["states"] = {s.version: s.state for s in client.model_status(release.model)}
            except Exception as exc:  # noqa: BLE001 - status must show what it can
                view["error"] = str(exc)
    return view


def _instances(release: Release) -> list[str]:
    """Staging, production, and the canary instance where the profile has one."""
    try:
        release.backend(CANARY_INSTANCE)
    except NotFound:
        return [STAGING, PRODUCTION]
    return [STAGING, PRODUCTION, CANARY_INSTANCE]


def _live_view(release: Release, limit: int) -> dict[str, Any]:
    """The production endpoint's split now and the model's latest live phases with their figures."""
    from pipeline.live.routing import router_for

    view: dict[str, Any] = {}
    try:
        view["split"] = router_for(release.paths).current_split().describe()
    except NotFound:
        view["split"] = "no live traffic path (endpoint not running or not configured)"
    except PipelineError as exc:
        view["split"] = f"unknown ({exc})"
    view["phases"] = [
        {"run": p.run_id, "version": p.version, "phase": p.phase, "split": f"{p.canary_percent:g}/{p.mirror_percent:g}",
         "started": f"{p.started_at:%H:%M:%SZ}", "updated": f"{p.updated_at:%H:%M:%SZ}", "decision": p.decision,
         "summary": p.summary}
        for p in release.registry.live_phases(release.model, limit=limit)
    ]
    return view


def _monitor_view(release: Release) -> dict[str, Any] | None:
    """The last production monitor run (:mod:`pipeline.monitoring`): its verdict and headline figures."""
    last = next(iter(release.registry.monitor_runs(release.model, limit=1)), None)
    if last is None:
        return None
    verdict = last.figures.get("verdict") or {}
    features = verdict.get("features") or []
    worst = max(features, key=lambda f: f.get("statistic", 0.0), default=None)
    predictions: dict[str, Any] = next(
        (d for d in verdict.get("distributions") or [] if d.get("name") == "predicted classes"), {})
    accuracy = verdict.get("accuracy") or {}
    return {"at": f"{last.at:%Y-%m-%d %H:%M:%SZ}", "run": last.run_id, "version": last.version,
            "decision": last.decision, "streak": last.streak, "requests": last.requests, "labelled": last.labelled,
            "max_ks": None if worst is None else {"feature": worst["name"], "statistic": round(worst["statistic"], 4)},
            "prediction_js": None if not predictions else round(predictions["js"], 4),
            "live_accuracy": accuracy.get("accuracy"), "expected_accuracy": accuracy.get("expected"),
            "report": last.report, "summary": last.summary}


def model_status(release: Release, history: int = _DEFAULT_HISTORY) -> dict[str, Any]:
    """Everything on-call needs to know about one model, as a dict."""
    registry = release.registry
    stable = registry.stable_version(release.model)
    holder = registry.lock_holder(release.model)
    return {
        "model": release.model,
        "base_path": str(release.base_path),
        "on_disk": list_versions(release.base_path),
        "stable": stable,
        "last_good_before_stable": registry.last_good_version(release.model, before=stable),
        "lock": None if holder is None else f"{holder.owner} until {holder.expires_at:%H:%M:%SZ}"
                + (f" ({holder.holder.describe()})" if holder.holder else ""),
        "servers": {name: _server_view(release, name) for name in _instances(release)},
        "live": _live_view(release, limit=history),
        "monitor": _monitor_view(release),
        "versions": [
            {"version": r.version, "state": str(r.state), "created": f"{r.created_at:%Y-%m-%d %H:%MZ}",
             "data": (r.data_sha256 or "")[:10], "data_version": (r.data_version or "")[:10] or None,
             "parts": len(r.data_parts), "run": r.airflow_run_id,
             "metrics": {k: round(v, 4) for k, v in r.metrics.items() if isinstance(v, (int, float))}}
            for r in registry.versions(release.model)
        ],
        "history": [
            {"at": f"{t.at:%Y-%m-%d %H:%M:%SZ}", "version": t.version, "from": t.from_state and str(t.from_state),
             "to": str(t.to_state), "run": t.run_id, "reason": t.reason}
            for t in registry.history(release.model, limit=history)
        ],
    }


def format_status(status: dict[str, Any]) -> str:
    """A readable multi-line view of :func:`model_status`."""
    lines = [f"{status['model']}  base={status['base_path']}  lock: {status['lock'] or 'free'}",
             f"  on disk     {' '.join(map(str, status['on_disk'])) or '-'}",
             f"  stable      {status['stable']}   rollback target: {status['last_good_before_stable']}"]
    for name, view in status["servers"].items():
        labels = " ".join(f"{k}={v}" for k, v in sorted(view["labels"].items())) or "-"
        states = " ".join(f"{v}:{s}" for v, s in sorted(view.get("states", {}).items())) or "-"
        running = "up" if view["running"] else "down"
        lines.append(f"  {name:<11} {running:<5} versions {view['versions'] or '-'}  labels {labels}  [{states}]")
    live = status.get("live") or {}
    lines.append(f"  live split  {live.get('split', '-')}")
    for phase in live.get("phases", [])[:4]:
        lines.append(f"    v{phase['version']} {phase['phase']:<7} {phase['decision']:<9} split {phase['split']}  "
                     f"{phase['started']}-{phase['updated']}  run {phase['run']}")
        summary = [line.strip() for line in phase["summary"].splitlines()]
        if phase["decision"] in ("fail", "undecided"):  # why, and what moved: the figures against their limits
            summary = summary[:4] + [line for line in summary if line.startswith(("reason:", "root cause:"))]
        lines.extend(f"      {line}" for line in summary[:4 + 6])
    monitor = status.get("monitor")
    if monitor:
        ks = monitor["max_ks"]
        accuracy = "-" if monitor["live_accuracy"] is None else f"{monitor['live_accuracy']:.3f}"
        largest = "-" if ks is None else f"{ks['statistic']} ({ks['feature']})"
        js = "-" if monitor["prediction_js"] is None else monitor["prediction_js"]
        lines.append(f"  monitor     {monitor['at']} v{monitor['version']} {monitor['decision']} (streak "
                     f"{monitor['streak']})  {monitor['requests']} requests, {monitor['labelled']} labelled  "
                     f"max KS {largest}  prediction JS {js}  "
                     f"live accuracy {accuracy}")
        if monitor["report"]:
            lines.append(f"    report {monitor['report']}")
    lines.append("  versions")
    for v in status["versions"]:
        metrics = " ".join(f"{k}={val}" for k, val in sorted(v["metrics"].items())[:3])
        parts = f" +{v['parts']} part(s)" if v.get("parts") else ""
        lines.append(f"    {v['version']:>3} {v['state']:<11} {v['created']}  data {v['data']}{parts}  {metrics}")
    lines.append("  history (newest first)")
    for t in status["history"]:
        lines.append(f"    {t['at']} v{t['version']} {t['from'] or '-'} -> {t['to']}  {t['reason'][:90]}")
    return "\n".join(lines)
