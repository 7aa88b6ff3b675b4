"""``make demo``: the MNIST release through Airflow on the embedded stack, judged on live traffic.

1. start the stack: embedded staging, production and canary TF Serving, the nginx production endpoint, the
   capture service, Prometheus, ``airflow standalone``;
2. release 1 (``airflow dags trigger mnist_release``): the first version becomes ``stable`` (nothing live to
   compare a first release with: the golden and held-out probes judge it);
3. live traffic starts: ``pipeline traffic mnist`` replays held-out digits through the production endpoint
   (REST and gRPC) and sends their true labels back as delayed feedback;
4. release 2, a retrained model (``--conf '{"epochs": 10}'``): shadow, then 5 -> 25 -> 50 % of live traffic,
   each step judged on live predictions, then ``stable`` -> 2;
5. release 3, a model whose input convention silently changed (``--conf '{"inject_fault": "input_convention"}'``):
   it passes evaluation and staging on its own convention, with no gate overridden, and only the live canary
   catches it: split 0, rollback, and the live figures that triggered it are printed.
The stack keeps running afterwards so the UI can be explored; ``make down`` stops it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline import stack
from pipeline.airflow_api import AirflowApi, trigger_dag
from pipeline.release.context import Release
from pipeline.release.status import model_status
from pipeline.settings import get_paths
from pipeline.steps import resolve_config

_DAG = "mnist_release"
_GOOD_CONF = {"epochs": 10}
_BAD_CONF = {"inject_fault": "input_convention"}
_TRAFFIC_RPS = 50
_TRAFFIC_MAX_S = 1800  # bounded; stopped as soon as the releases are done
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# One release's deadline. Idle it takes 3-5 minutes; beside a parallel test run on 2 cores, a 10-epoch retrain
# alone took 7 (release 2 missed the former 600 s while still in shadow).
_RELEASE_TIMEOUT_S = 1800.0


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run(api: AirflowApi, conf: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
    start = time.perf_counter()
    run_id = trigger_dag(api.paths, _DAG, conf)
    print(f"   triggered {_DAG} run {run_id}", flush=True)
    run = api.wait_for_run(_DAG, run_id, timeout_s=_RELEASE_TIMEOUT_S)
    return run_id, run, time.perf_counter() - start


def _task_summary(api: AirflowApi, run_id: str) -> str:
    rows = sorted(api.task_instances(_DAG, run_id), key=lambda t: t.get("start_date") or "~")
    lines = [f"   {t['task_id']:<18} {t['state'] or '-':<15} {t.get('duration') or 0:6.1f} s" for t in rows]
    if any(t["task_id"] == "deploy_staging" and t["state"] == "skipped" for t in rows):
        lines.append("   (this exact model was released before — training is deterministic — so the run stopped "
                     "after export; `make down clean` starts the demo from scratch)")
    return "\n".join(lines)


def _start_traffic() -> subprocess.Popen[bytes]:
    """``pipeline traffic mnist`` in the background: live clients for the canary to be judged on."""
    command = [sys.executable, "-m", "pipeline", "traffic", "mnist", "--rps", str(_TRAFFIC_RPS),
               "--duration", str(_TRAFFIC_MAX_S), "--api", "both"]
    print(f"   {' '.join(command[2:])}  (log: var/live/traffic.log)", flush=True)
    return start_child(command, get_paths().home / "live" / "traffic.log")


def start_child(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """A background process of a demo, its output appended to ``log_path``; it gets SIGTERM when the demo's process
    ends, however it ends (a killed demo must not leave an hour of traffic running against the next stack)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_end_with_parent)


def _end_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``; elsewhere none)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _stop_traffic(process: subprocess.Popen[bytes]) -> None:
    process.terminate()  # it prints its report (sent, failed, latency, feedback) on the way out
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _live_figures(run_id: str) -> str:
    """The live phases of a run with the figures each decided on (the failed one's root cause included)."""
    release = Release(resolve_config("mnist"))
    phases = sorted(release.registry.live_phases("mnist", run_id=run_id), key=lambda p: p.id)
    lines = []
    for phase in phases:
        lines.append(f"   {phase.phase:<7} {phase.decision:<9} (canary {phase.canary_percent:g} %, mirror "
                     f"{phase.mirror_percent:g} %)")
        if phase.decision != "pass":
            lines.extend(f"     {line.strip()}" for line in phase.summary.splitlines())
    return "\n".join(lines) or "   (no live phase ran)"


def _production_summary() -> dict[str, Any]:
    status = model_status(Release(resolve_config("mnist")))
    production = status["servers"]["production"]
    stable = status["stable"]
    metrics: dict[str, Any] = next((v["metrics"] for v in status["versions"] if v["version"] == stable), {})
    return {"stable": stable, "labels": production["labels"], "versions": production["versions"],
            "accuracy": metrics.get("accuracy")}


def run_demo(skip_fault: bool = False) -> str:
    """Run the demo; returns where to look."""
    paths = get_paths()
    _say("starting the stack: TF Serving (staging, production, canary), nginx endpoint, capture, Prometheus, Airflow")
    where = stack.up(paths)
    api = AirflowApi(where["airflow_ui"], paths)
    api.wait_for_dag(_DAG)
    _say(f"release 1: airflow dags trigger {_DAG}")
    run_id, run, seconds = _run(api, {})
    print(_task_summary(api, run_id))
    print(f"   run {run['state']} in {seconds:.0f} s; production: {_production_summary()}")
    _say(f"live traffic: {_TRAFFIC_RPS} requests/s of held-out digits through {where.get('production_endpoint_rest')}")
    traffic = _start_traffic()
    try:
        _say(f"release 2, retrained: airflow dags trigger {_DAG} --conf '{{\"epochs\": 10}}'")
        run_id, run, seconds = _run(api, _GOOD_CONF)
        print(_task_summary(api, run_id))
        print(_live_figures(run_id))
        print(f"   run {run['state']} in {seconds:.0f} s; production: {_production_summary()}")
        if not skip_fault:
            _say(f"release 3, input convention silently changed: airflow dags trigger {_DAG} "
                 f"--conf '{{\"inject_fault\": \"input_convention\"}}'")
            run_id, run, seconds = _run(api, _BAD_CONF)
            print(_task_summary(api, run_id))
            print("   live figures that decided:")
            print(_live_figures(run_id))
            print(f"   run {run['state']} in {seconds:.0f} s (expected: failed, rolled back by the live canary); "
                  f"production: {_production_summary()}")
    finally:
        _stop_traffic(traffic)
    lines = [f"Airflow UI   {where['airflow_ui']}   login {where['login']}",
             f"Task logs    {where['logs']}",
             f"Endpoint     REST {where.get('production_endpoint_rest')}   gRPC {where.get('production_endpoint_grpc')}"
             f"   (clients; feedback: POST {where.get('capture')}/feedback/mnist)",
             f"Servers      staging {where['staging_rest']}   production {where['production_rest']}",
             f"Prometheus   {where.get('prometheus')}",
             f"Shell        {where['shell']}   (then: airflow dags trigger mnist_release --conf '{{\"epochs\": 3}}')",
             "State        .venv/bin/pipeline status mnist   (live split, phases and their figures)",
             "Traffic      .venv/bin/pipeline traffic mnist --rps 20 --duration 60",
             "Stop         make down"]
    return "\n".join(lines)
