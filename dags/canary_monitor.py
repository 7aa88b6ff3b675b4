"""Scheduled probe of production: replays each model's golden requests through the ``stable`` label.

When a probe fails, the task rolls that model back to its last good version on its own, records why in
the registry, and fails so the run shows red. Interval: ``$PIPELINE_MONITOR_MINUTES`` (default 5);
``PIPELINE_SCHEDULES=off`` (the demo stack) leaves it to manual triggers.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from pipeline.config import list_models
from pipeline.wire.grpc_io import prefer_classic_io

_DEFAULT_MINUTES = 5

_SCHEDULE = (None if os.environ.get("PIPELINE_SCHEDULES", "on") == "off"  # the demo stack: by hand only
             else pendulum.duration(minutes=int(os.environ.get("PIPELINE_MONITOR_MINUTES", _DEFAULT_MINUTES))))

with DAG(
    dag_id="canary_monitor",
    schedule=_SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["monitor", "on-call"],
) as dag:
    for _model in list_models():

        @task(task_id=f"probe_{_model}")
        def probe(model: str = _model, **context) -> dict:
            prefer_classic_io()  # before the gRPC client loads grpc
            from pipeline import tasks

            return tasks.monitor(model, context["run_id"])

        probe()
