"""``make demo``: the MNIST release through Airflow on the embedded servers, then a bad model caught by the canary.

1. start the stack (embedded staging + production TF Serving, ``airflow standalone``);
2. ``airflow dags trigger mnist_release`` and wait: production serves the new version as ``stable``;
3. ``airflow dags trigger mnist_release --conf '{"inject_fault": "label_shift"}'``: the canary fails,
   production is rolled back automatically, and the run fails with the canary's reasons.
The stack keeps running afterwards so the UI can be explored; ``make down`` stops it.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline import stack
from pipeline.airflow_api import AirflowApi, trigger_dag
from pipeline.release.context import Release
from pipeline.release.status import model_status
from pipeline.settings import get_paths
from pipeline.steps import resolve_config

_DAG = "mnist_release"
_FAULT_CONF = {"inject_fault": "label_shift"}


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run(api: AirflowApi, conf: dict[str, Any]) -> tuple[str, dict[str, Any], float]:
    start = time.perf_counter()
    run_id = trigger_dag(api.paths, _DAG, conf)
    print(f"   triggered {_DAG} run {run_id}", flush=True)
    run = api.wait_for_run(_DAG, run_id)
    return run_id, run, time.perf_counter() - start


def _task_summary(api: AirflowApi, run_id: str) -> str:
    rows = sorted(api.task_instances(_DAG, run_id), key=lambda t: t.get("start_date") or "~")
    lines = [f"   {t['task_id']:<18} {t['state'] or '-':<15} {t.get('duration') or 0:6.1f} s" for t in rows]
    if any(t["task_id"] == "deploy_staging" and t["state"] == "skipped" for t in rows):
        lines.append("   (this exact model was released before — training is deterministic — so the run stopped "
                     "after export; `make down clean` starts the demo from scratch)")
    return "\n".join(lines)


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
    _say("starting embedded TF Serving (staging, production) and Airflow standalone")
    where = stack.up(paths)
    api = AirflowApi(where["airflow_ui"], paths)
    api.wait_for_dag(_DAG)
    _say(f"release 1: airflow dags trigger {_DAG}")
    run_id, run, seconds = _run(api, {})
    print(_task_summary(api, run_id))
    print(f"   run {run['state']} in {seconds:.0f} s; production: {_production_summary()}")
    if not skip_fault:
        _say(f"release 2, a deliberately bad model: airflow dags trigger {_DAG} --conf '{{\"inject_fault\": \"label_shift\"}}'")
        run_id, run, seconds = _run(api, _FAULT_CONF)
        print(_task_summary(api, run_id))
        print(f"   run {run['state']} in {seconds:.0f} s (expected: failed, canary rolled back); "
              f"production: {_production_summary()}")
    lines = [f"Airflow UI   {where['airflow_ui']}   login {where['login']}",
             f"Task logs    {where['logs']}",
             f"Servers      staging {where['staging_rest']}   production {where['production_rest']}",
             f"Shell        {where['shell']}   (then: airflow dags trigger mnist_release --conf '{{\"epochs\": 3}}')",
             "State        .venv/bin/pipeline status mnist",
             "Stop         make down"]
    return "\n".join(lines)
