"""On-call rollback: point production's ``stable`` label back at a known-good version, in seconds.

Trigger from the UI form or `airflow dags trigger model_rollback --conf '{"model": "mnist"}'`
(optionally `"to_version": N`; default: the last good version before the current stable).
The same as `pipeline rollback <model> [--to N]`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from pipeline.config import list_models
from pipeline.wire.grpc_io import prefer_classic_io

_MODELS = list_models()

with DAG(
    dag_id="model_rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "model": Param(_MODELS[0] if _MODELS else None, type="string", enum=_MODELS,
                       description="which model to roll back"),
        "to_version": Param(None, type=["null", "integer"], minimum=1,
                            description="version to make stable (default: the last good one before the current)"),
        "reason": Param("on-call rollback", type="string", minLength=1),
    },
    doc_md=__doc__,
    tags=["on-call", "rollback"],
) as dag:

    @task
    def rollback(**context) -> dict:
        prefer_classic_io()  # before the gRPC client loads grpc
        from pipeline import tasks

        params = context["params"]
        return tasks.rollback(params["model"], params["to_version"], context["run_id"], params["reason"])

    rollback()
