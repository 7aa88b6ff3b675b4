"""``make demo-loop``: the closed loop on the embedded stack — drift, new labelled data, a retrain Airflow starts by
itself, the live canary, and live accuracy back.

1. start the stack; a stable MNIST version (release 1 through Airflow when there is none);
2. unshifted live traffic (``pipeline traffic mnist``, true labels posted back) and a baseline monitor window
   (``canary_monitor`` triggered through Airflow): live accuracy before the shift;
3. the onset: the traffic restarts with ``--shift`` on a 20 % share of the digits ("a new scanner", labels kept);
4. a monitor window every ``_WINDOW_S`` until the alarm (``monitoring.sustained_windows`` drifted windows); with
   ``monitoring.retrain_on_drift`` every acting run hands the labelled live requests to the ingest, which posts an
   event on ``mnist_raw_data`` once ``data.retrain_min_new_examples`` new examples wait;
5. that event starts ``mnist_release`` (data-aware schedule): the demo never triggers it, it finds the
   asset-triggered run and follows it through staging and the live canary while the shifted traffic goes on;
6. monitor windows on the new stable version until live accuracy is back; then live accuracy on the shifted digits
   the new version never trained on (their digests are not in its training split), beside the overall figure.

Every step prints its time since the onset and its figures. No gate is loosened: the release is the same DAG with
the same config as any other; the loop's pace comes from the shipped configs (configs/models/mnist.yaml).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline import stack
from pipeline.airflow_api import AirflowApi, trigger_dag
from pipeline.config import ModelConfig
from pipeline.demo import _live_figures, _say, _stop_traffic, _task_summary, start_child
from pipeline.errors import DeadlineExceeded, PipelineError
from pipeline.release.context import Release
from pipeline.release.registry import MonitorRun
from pipeline.settings import Paths, get_paths
from pipeline.steps import resolve_config
from pipeline.util.files import write_atomically

MODEL = "mnist"
RELEASE_DAG = f"{MODEL}_release"
MONITOR_DAG = "canary_monitor"
SHIFT = "translate"
SHIFT_SHARE = 0.2
TRAFFIC_RPS = 60
# The new scanner's digits come from every split of the snapshot, each once per cycle (traffic --shift-pool
# snapshot): repeats are no new examples. The embedded profile captures every request while no canary is live
# (traffic.monitor_mirror_percent 100), so 60 requests/s give ~10 new labelled shifted digits a second and
# data.retrain_min_new_examples (1,000 in configs/models/mnist.yaml) wait ~2 minutes after the onset.
SHIFT_POOL = "snapshot"
# One monitor window: the canary_monitor run itself (trigger through the CLI, scheduling, the task) takes ~15-30 s
# on 2 busy cores; it judges up to monitoring.window_requests (300) of the requests captured since the last one.
WINDOW_S = 30.0
MAX_ALARM_WINDOWS = 16  # the alarm comes within 2; the rest wait for the labelled examples the retrain needs
MAX_RECOVERY_WINDOWS = 4
# Live accuracy before the shift, pooled like the figure after: one window's 300 labels give it a standard error of
# 0.8 point (binomial, p 0.98), close to the 1-point target itself.
BASELINE_WINDOWS = 2
RELEASE_TIMEOUT_S = 900.0
ASSET_RUN_WAIT_S = 300.0
RECOVERED_WITHIN = 0.01  # live accuracy back within 1 point of its pre-shift value


@dataclass
class LoopReport:
    """What the loop measured; times are ``time.time()`` seconds."""

    shift: str = SHIFT
    started_at: float = field(default_factory=time.time)
    onset_at: float | None = None
    alarm_at: float | None = None
    alarm_windows: int | None = None  # monitor windows from the onset to the alarm (the alarm's included)
    announced_at: float | None = None
    announced_after: float | None = None  # the announcing monitor window's end: the event (and its run) came later
    release_run_id: str | None = None
    release_state: str | None = None
    release_run_s: float | None = None  # the asset-triggered run's own start -> end (a floor of alarm -> serving)
    train_task_s: float | None = None
    serving_at: float | None = None
    new_version: int | None = None
    old_version: int | None = None
    accuracy_before: float | None = None
    accuracy_worst: float | None = None
    accuracy_after: float | None = None
    after_groups: dict[str, Any] = field(default_factory=dict)  # the capture store's figures after the loop
    before_groups: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    windows: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        onset = self.onset_at

        def since(at: float | None, start: float | None = onset) -> float | None:
            return None if at is None or start is None else round(at - start, 1)

        return {"shift": self.shift, "shift_share": SHIFT_SHARE, "shift_pool": SHIFT_POOL,
                "traffic_rps": TRAFFIC_RPS, "window_s": WINDOW_S,
                "onset_to_alarm_s": since(self.alarm_at), "onset_to_alarm_windows": self.alarm_windows,
                "alarm_to_serving_s": since(self.serving_at, self.alarm_at),
                "onset_to_serving_s": since(self.serving_at), "release_run_id": self.release_run_id,
                "release_state": self.release_state, "release_run_s": self.release_run_s,
                "train_task_s": self.train_task_s, "old_version": self.old_version,
                "new_version": self.new_version, "accuracy_before": self.accuracy_before,
                "accuracy_worst": self.accuracy_worst, "accuracy_after": self.accuracy_after,
                "before": self.before_groups, "after": self.after_groups, "data": self.data,
                "windows": self.windows}


# ---- pure helpers (unit-tested) --------------------------------------------------------------------------------


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def find_asset_triggered_run(runs: list[dict[str, Any]], after: float) -> dict[str, Any] | None:
    """The first run Airflow started from an asset event (``run_type`` ``asset_triggered``) queued at or after
    ``after`` (epoch seconds), from a list of DAG runs as the REST API gives them; None when there is none yet."""
    found = []
    for run in runs:
        if run.get("run_type") != "asset_triggered":
            continue
        at = _parse_time(run.get("queued_at") or run.get("run_after") or run.get("logical_date"))
        if at is not None and at >= after:
            found.append((at, run))
    return min(found, key=lambda pair: pair[0])[1] if found else None


def group_accuracy(answers: list[tuple[str, int, int]], base_digests: set[str], train_digests: set[str]
                   ) -> dict[str, Any]:
    """Live accuracy of ``(example digest, predicted class, true label)`` answers, overall and by group:
    ``unshifted`` (the digest is in the original data), ``shifted`` (it is not: a transformed digit),
    ``shifted_seen`` / ``shifted_unseen`` (in the serving version's training split, or not)."""
    groups: dict[str, list[bool]] = {"overall": [], "unshifted": [], "shifted": [], "shifted_seen": [],
                                     "shifted_unseen": []}
    for digest, predicted, label in answers:
        right = predicted == label
        groups["overall"].append(right)
        if digest in base_digests:
            groups["unshifted"].append(right)
            continue
        groups["shifted"].append(right)
        groups["shifted_seen" if digest in train_digests else "shifted_unseen"].append(right)
    return {name: {"n": len(hits), "accuracy": round(sum(hits) / len(hits), 4) if hits else None}
            for name, hits in groups.items()}


def recovered(before: float | None, after: float | None, within: float = RECOVERED_WITHIN) -> bool:
    """Live accuracy back within ``within`` of its pre-shift value."""
    return before is not None and after is not None and after >= before - within


def pooled_accuracy(runs: list[MonitorRun]) -> float | None:
    """Live accuracy over several windows, each weighted by its labelled requests; None without labels."""
    correct = labelled = 0.0
    for run in runs:
        accuracy = (run.figures.get("verdict") or {}).get("accuracy") or {}
        if accuracy.get("accuracy") is not None and accuracy.get("labelled"):
            correct += float(accuracy["accuracy"]) * int(accuracy["labelled"])
            labelled += int(accuracy["labelled"])
    return round(correct / labelled, 4) if labelled else None


def window_accuracy(run: MonitorRun) -> float | None:
    accuracy = (run.figures.get("verdict") or {}).get("accuracy") or {}
    value = accuracy.get("accuracy")
    return None if value is None else float(value)


# ---- the stack and its traffic ----------------------------------------------------------------------------------


class Clock:
    """Prints each step with its time (since the start, and since the onset once there is one)."""

    def __init__(self, report: LoopReport) -> None:
        self.report = report

    def stamp(self) -> str:
        now = time.time()
        text = f"t={now - self.report.started_at:6.0f} s"
        if self.report.onset_at is not None:
            text += f", onset+{now - self.report.onset_at:4.0f} s"
        return text

    def say(self, text: str) -> None:
        _say(f"[{self.stamp()}] {text}")


def start_traffic(paths: Paths, shift: str | None, duration_s: float) -> subprocess.Popen[bytes]:
    """``pipeline traffic mnist`` in the background (both APIs, true labels posted back), shifted or not."""
    command = [sys.executable, "-m", "pipeline", "traffic", MODEL, "--rps", str(TRAFFIC_RPS),
               "--duration", str(int(duration_s)), "--api", "both"]
    if shift is not None:
        command += ["--shift", shift, "--shift-share", str(SHIFT_SHARE), "--shift-pool", SHIFT_POOL]
    print(f"   {' '.join(command[2:])}  (log: {paths.home / 'live' / 'traffic.log'})", flush=True)
    return start_child(command, paths.home / "live" / "traffic.log")


def ensure_stable(api: AirflowApi, release: Release, clock: Clock) -> int:
    """The stable version; release 1 through Airflow when there is none."""
    stable = release.registry.stable_version(MODEL)
    if stable is not None:
        print(f"   stable version {stable} already serves", flush=True)
        return stable
    running = api.get(f"/dags/{RELEASE_DAG}/dagRuns?state=running&state=queued&limit=1")["dag_runs"]
    if running:  # one already under way (a demo started before this one): follow it rather than start another
        run_id = running[0]["dag_run_id"]
        clock.say(f"no stable version yet: following the release already running ({run_id})")
    else:
        clock.say(f"no stable version: release 1 (airflow dags trigger {RELEASE_DAG})")
        run_id = trigger_dag(api.paths, RELEASE_DAG, {})
    run = api.wait_for_run(RELEASE_DAG, run_id, timeout_s=RELEASE_TIMEOUT_S)
    print(_task_summary(api, run_id))
    stable = release.registry.stable_version(MODEL)
    if run["state"] != "success" or stable is None:
        raise PipelineError(f"release 1 ended {run['state']}; no stable version to watch")
    return stable


def monitor_window(api: AirflowApi, release: Release, clock: Clock, label: str) -> MonitorRun:
    """One ``canary_monitor`` run through Airflow (its drift task fails on the alarm: expected); the run's record."""
    before = next(iter(release.registry.monitor_runs(MODEL, limit=1)), None)
    run_id = trigger_dag(api.paths, MONITOR_DAG, {})
    run = api.wait_for_run(MONITOR_DAG, run_id, timeout_s=300)
    latest = next(iter(release.registry.monitor_runs(MODEL, limit=1)), None)
    if latest is None or (before is not None and latest.id == before.id):
        raise PipelineError(f"{MONITOR_DAG} run {run_id} ended {run['state']} without recording a monitor run of "
                            f"{MODEL}; see its task logs")
    accuracy = window_accuracy(latest)
    retrain = (latest.figures.get("retrain") or {}).get("result") or {}
    print(f"   [{clock.stamp()}] {label}: {latest.summary}", flush=True)
    print(f"      window {latest.requests} requests, {latest.labelled} labelled, live accuracy "
          f"{'-' if accuracy is None else f'{accuracy:.4f}'}, max KS {_max_ks(latest):.3f}, prediction JS "
          f"{_prediction_js(latest):.3f}; report {latest.report}", flush=True)
    if retrain:
        print(f"      ingest: {retrain.get('new_examples')} new example(s), data version "
              f"{str(retrain.get('data_version'))[:12]}, announced {retrain.get('announced')}: "
              f"{retrain.get('reason')}", flush=True)
    return latest


def _max_ks(run: MonitorRun) -> float:
    features = (run.figures.get("verdict") or {}).get("features") or []
    return max((float(f.get("statistic") or 0.0) for f in features), default=0.0)


def _prediction_js(run: MonitorRun) -> float:
    tests = (run.figures.get("verdict") or {}).get("distributions") or []
    return max((float(t.get("js") or 0.0) for t in tests), default=0.0)


def _window_row(run: MonitorRun, phase: str, report: LoopReport) -> dict[str, Any]:
    at = run.window_until
    return {"phase": phase, "at_s": None if report.onset_at is None else round(at - report.onset_at, 1),
            "decision": run.decision, "streak": run.streak, "requests": run.requests, "labelled": run.labelled,
            "accuracy": window_accuracy(run), "max_ks": round(_max_ks(run), 4),
            "prediction_js": round(_prediction_js(run), 4), "version": run.version}


def pace(started: float) -> None:
    """Sleep out the rest of one window."""
    time.sleep(max(0.0, WINDOW_S - (time.monotonic() - started)))


def wait_for_asset_run(api: AirflowApi, after: float, timeout_s: float = ASSET_RUN_WAIT_S) -> dict[str, Any]:
    """The run of ``mnist_release`` that the raw-data event started (the demo triggers none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        runs = api.get(f"/dags/{RELEASE_DAG}/dagRuns?order_by=-run_after&limit=20")["dag_runs"]
        run = find_asset_triggered_run(runs, after)
        if run is not None:
            return run
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"no asset-triggered run of {RELEASE_DAG} within {timeout_s:.0f} s of the "
                                   "announcement; is the DAG scheduled on mnist_raw_data?")
        time.sleep(2.0)


def _durations(api: AirflowApi, run: dict[str, Any], report: LoopReport) -> None:
    started, ended = _parse_time(run.get("start_date")), _parse_time(run.get("end_date"))
    report.release_run_s = None if started is None or ended is None else round(ended - started, 1)
    for task in api.task_instances(RELEASE_DAG, run["dag_run_id"]):
        if task["task_id"] == "train":
            report.train_task_s = task.get("duration")


# ---- live accuracy by group from the capture store ---------------------------------------------------------------


def live_answers(paths: Paths, config: ModelConfig, since: float, until: float) -> list[tuple[str, int, int]]:
    """``(digest, stable's class, label)`` of each labelled one-instance request captured in ``[since, until)``."""
    from pipeline.data.landing import _class_names, _kind
    from pipeline.data.live_examples import LabelledRequest, decode_requests
    from pipeline.data.snapshot import example_digests
    from pipeline.live.store import CaptureStore

    with CaptureStore.for_model(MODEL, paths) as store:
        rows = [r for r in store.captured(since=since, until=until, limit=100_000)
                if r.label is not None and r.stable_class is not None and r.inputs_kept]
        requests = [LabelledRequest(r.request_id, store.inputs_of(r.request_id), int(r.label or 0), r.batch_size)
                    for r in rows]
    predicted = {r.request_id: int(r.stable_class or 0) for r in rows}
    decoded = decode_requests(requests, _kind(config), _class_names(config))
    digests = example_digests(decoded.examples)
    return [(digest, predicted[rid], int(label))
            for digest, rid, label in zip(digests, decoded.request_ids, decoded.examples.y, strict=True)]


def base_and_train_digests(paths: Paths, config: ModelConfig, release: Release, version: int
                           ) -> tuple[set[str], set[str]]:
    """The original data's digests (every split of the prepared source) and ``version``'s training split's."""
    from pipeline.data.dataset import Snapshot
    from pipeline.data.prepare import find_prepared
    from pipeline.data.snapshot import example_digests
    from pipeline.monitoring.reference import snapshot_dir

    base = find_prepared(config, paths)
    if base is None:
        raise PipelineError(f"{MODEL}: the source was never prepared under {paths.home}")
    base_digests = {d for name in ("train", "val", "test") for d in example_digests(base.split(name))}
    snapshot = Snapshot.open(snapshot_dir(MODEL, release.registry.get_version(MODEL, version), paths))
    return base_digests, set(example_digests(snapshot.split("train")))


def _print_groups(title: str, groups: dict[str, Any]) -> None:
    cells = ", ".join(f"{name} {g['accuracy'] if g['accuracy'] is not None else '-'} (n={g['n']})"
                      for name, g in groups.items())
    print(f"   {title}: {cells}", flush=True)


# ---- the loop ------------------------------------------------------------------------------------------------------


def run_loop(paths: Paths | None = None, shift: str = SHIFT) -> LoopReport:
    """Run the whole loop on the stack (started if needed) with ``shift`` at the onset; the figures, also printed
    step by step and written to ``<home>/live/loop-report.json``."""
    paths = paths or get_paths()
    report = LoopReport(shift=shift)
    clock = Clock(report)
    config = resolve_config(MODEL)
    if not config.monitoring.retrain_on_drift:
        raise PipelineError(f"{MODEL}: monitoring.retrain_on_drift is off in its config: the loop cannot close")
    # The demo triggers canary_monitor every WINDOW_S itself; a stack it starts runs no 5-minute schedule beside.
    os.environ.setdefault("PIPELINE_MONITOR_MINUTES", "off")
    clock.say("starting the stack (TF Serving, nginx endpoint, capture, Prometheus, Airflow)")
    where = stack.up(paths)
    api = AirflowApi(where["airflow_ui"], paths)
    api.wait_for_dag(RELEASE_DAG)
    api.wait_for_dag(MONITOR_DAG)
    release = Release(config)
    report.old_version = ensure_stable(api, release, clock)
    clock.say(f"unshifted live traffic, {TRAFFIC_RPS} requests/s through {where.get('production_endpoint_rest')}")
    traffic = start_traffic(paths, None, 3600)
    try:
        time.sleep(WINDOW_S / 2)
        monitor_window(api, release, clock, "window closing what came before")  # a clean start for the baseline
        baseline_from = time.time()
        baseline = _paced_windows(api, release, clock, report, BASELINE_WINDOWS, "baseline",
                                  lambda number: f"baseline window {number}")
        report.accuracy_before = pooled_accuracy(baseline)
        base_digests, old_train = base_and_train_digests(paths, config, release, report.old_version)
        report.before_groups = group_accuracy(live_answers(paths, config, baseline_from, time.time()), base_digests,
                                              old_train)
        _print_groups("live accuracy before the shift (capture store)", report.before_groups)
        _stop_traffic(traffic)
        traffic = start_traffic(paths, shift, 3600)
        report.onset_at = time.time()
        clock.say(f"ONSET: {SHIFT_SHARE:.0%} of the digits now come shifted ({shift}: a new scanner), labels kept")
        _watch_until_alarm(api, release, clock, report)
        _follow_release(api, release, clock, report)
        _watch_recovery(api, release, clock, report)
        base_digests, new_train = base_and_train_digests(paths, config, release, report.new_version or 0)
        report.after_groups = group_accuracy(live_answers(paths, config, report.serving_at or 0, time.time()),
                                             base_digests, new_train)
        _print_groups("live accuracy after the loop (capture store, new version)", report.after_groups)
    finally:
        _stop_traffic(traffic)
        target = paths.home / "live" / "loop-report.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, json.dumps(report.as_dict(), indent=2) + "\n")
    return report


def _watch_until_alarm(api: AirflowApi, release: Release, clock: Clock, report: LoopReport) -> None:
    started = time.monotonic()  # a window every WINDOW_S from the onset (or the run's own time, if longer)
    for number in range(1, MAX_ALARM_WINDOWS + 1):
        pace(started)
        started = time.monotonic()
        run = monitor_window(api, release, clock, f"shifted window {number}")
        report.windows.append(_window_row(run, "shifted", report))
        accuracy = window_accuracy(run)
        if accuracy is not None:
            report.accuracy_worst = accuracy if report.accuracy_worst is None else min(report.accuracy_worst,
                                                                                        accuracy)
        if run.decision == "alarm" and report.alarm_at is None:
            report.alarm_at, report.alarm_windows = time.time(), number
            clock.say(f"ALARM after {number} window(s): {run.summary}")
        retrain = (run.figures.get("retrain") or {}).get("result") or {}
        if retrain:
            report.data = {k: retrain.get(k) for k in ("data_version", "parts", "ingested_total", "total_examples",
                                                       "pending_examples", "threshold", "announced")}
        if retrain.get("announced"):
            report.announced_at, report.announced_after = time.time(), run.window_until
            clock.say(f"data version {str(retrain.get('data_version'))[:12]} announced on {MODEL}_raw_data "
                      f"({retrain.get('ingested_total')} ingested example(s), {retrain.get('total_examples')} in all)")
            return
    raise PipelineError(f"no retrain announced after {MAX_ALARM_WINDOWS} shifted windows (alarm at "
                        f"{report.alarm_windows}); see the monitor reports")


def _follow_release(api: AirflowApi, release: Release, clock: Clock, report: LoopReport) -> None:
    run = wait_for_asset_run(api, report.announced_after or time.time())
    report.release_run_id = run["dag_run_id"]
    clock.say(f"Airflow started {RELEASE_DAG} by itself: run {run['dag_run_id']} (run_type {run['run_type']}); "
              "following it (the shifted traffic goes on)")
    finished = api.wait_for_run(RELEASE_DAG, run["dag_run_id"], timeout_s=RELEASE_TIMEOUT_S)
    report.release_state = finished["state"]
    stable = release.registry.stable_version(MODEL)
    report.serving_at = time.time() if finished["state"] == "success" else None
    report.new_version = stable
    _durations(api, finished, report)
    print(_task_summary(api, run["dag_run_id"]))
    print(_live_figures(run["dag_run_id"]))
    record = release.registry.get_version(MODEL, stable) if stable is not None else None
    clock.say(f"{RELEASE_DAG} {finished['state']} in {report.release_run_s} s; stable {report.old_version} -> "
              f"{stable}, trained on data version {str(record.data_version if record else None)[:12]} "
              f"({len(record.data_parts) if record else 0} part(s))")
    if finished["state"] != "success" or stable == report.old_version:
        raise PipelineError(f"the retrain did not reach production ({finished['state']}); see its task logs")


def _paced_windows(api: AirflowApi, release: Release, clock: Clock, report: LoopReport, count: int, phase: str,
                   title: Callable[[int], str]) -> list[MonitorRun]:
    """``count`` monitor windows, one every WINDOW_S, each a row of the report's ``phase``."""
    started = time.monotonic()
    runs = []
    for number in range(1, count + 1):
        pace(started)
        started = time.monotonic()
        run = monitor_window(api, release, clock, title(number))
        report.windows.append(_window_row(run, phase, report))
        runs.append(run)
    return runs


def _watch_recovery(api: AirflowApi, release: Release, clock: Clock, report: LoopReport) -> None:
    pace(time.monotonic())
    monitor_window(api, release, clock, "window closing the release")  # may straddle the canary: not counted
    runs = _paced_windows(api, release, clock, report, MAX_RECOVERY_WINDOWS, "after",
                          lambda number: f"window {number} on version {report.new_version}")
    report.accuracy_after = pooled_accuracy(runs)  # every window, pooled: one lucky window proves nothing
    back = "back" if recovered(report.accuracy_before, report.accuracy_after) else "NOT back"
    clock.say(f"live accuracy {back} within {RECOVERED_WITHIN:.0%} over {len(runs)} windows on the new version: "
              f"{report.accuracy_after} (before the shift {report.accuracy_before}, worst {report.accuracy_worst})")


def run_demo_loop() -> str:
    """``pipeline demo-loop``: the loop, then the figures and where to look."""
    report = run_loop()
    figures = report.as_dict()
    lines = [f"onset -> alarm            {figures['onset_to_alarm_s']} s ({figures['onset_to_alarm_windows']} "
             "window(s))",
             f"alarm -> serving 100 %    {figures['alarm_to_serving_s']} s (the release run itself "
             f"{figures['release_run_s']} s, training {figures['train_task_s']} s)",
             f"onset -> serving 100 %    {figures['onset_to_serving_s']} s (target <= 600)",
             f"live accuracy             before {figures['accuracy_before']}, worst {figures['accuracy_worst']}, "
             f"after {figures['accuracy_after']}",
             f"after, shifted unseen     {(figures['after'].get('shifted_unseen') or {}).get('accuracy')} "
             f"(n={(figures['after'].get('shifted_unseen') or {}).get('n')}); the state: pipeline status mnist; "
             "stop: make down"]
    return "\n".join(lines)
