"""Run a whole release in one process, task by task, in the DAG's order (CLI, tests, debugging).

The Airflow DAG is the way releases run in production; this runs the same task functions so a release
can be reproduced by hand or in a test without a scheduler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pipeline.release import tasks

log = logging.getLogger(__name__)


def run_release(model: str, conf: dict[str, Any] | None = None, run_id: str | None = None,
                on_task: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """prepare → … → finalize, with restore_production after a failure past staging; returns each task's result."""
    run_id = run_id or f"manual__{time.strftime('%Y%m%dT%H%M%S')}"
    results: dict[str, Any] = {"run_id": run_id}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        results[name] = fn()
        if on_task:
            on_task(name, time.perf_counter() - start)
        return results[name]

    step("check_conf", lambda: tasks.check_conf(model, conf))
    data = step("prepare_data", lambda: tasks.prepare_data(model, conf))
    step("validate_data", lambda: tasks.validate_data(model, conf, data["snapshot"]))
    run = step("train", lambda: tasks.train(model, conf, data["snapshot"]))
    step("evaluate", lambda: tasks.evaluate(model, conf, run["run_dir"]))
    exported = step("export", lambda: tasks.export(model, conf, run["run_dir"], data["snapshot"], run_id))
    if not tasks.has_new_version(exported):
        return results
    version = exported["version"]
    try:
        step("deploy_staging", lambda: tasks.deploy_staging(model, version, run_id))
        step("validate_staging", lambda: tasks.validate_staging(model, conf, version, run_id))
        if not tasks.should_promote(conf):
            return results
        step("promote_canary", lambda: tasks.promote_canary(model, version, run_id))
        step("canary_check", lambda: tasks.canary_check(model, version, run_id))
        step("finalize", lambda: tasks.finalize(model, version, run_id))
    except Exception as exc:
        log.error(tasks.record_task_failure(model, run_id, None, str(exc)))
        tasks.restore_production(model, version, run_id)
        raise
    return results
