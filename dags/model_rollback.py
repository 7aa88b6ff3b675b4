"""On-call rollback: point production's ``stable`` label back at a known-good version, in seconds.

Trigger from the UI form or `airflow dags trigger model_rollback --conf '{"model": "mnist"}'`
(optionally `"to_version": N`; default: the last good version before the current stable).
The same as `pipeline rollback <model> [--to N]`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from pipeline.assets import PRODUCTION, served_asset
from pipeline.config import list_models
from pipeline.flow import OWNER
from pipeline.notify import ROLLBACK, ROLLBACK_FAILED, alert_notifiers, note_and_log
from pipeline.refusals import refusals_end_quietly
from pipeline.util.native_stderr import route_native_startup
from pipeline.wire.grpc_io import prefer_classic_io

_MODELS = list_models()


def _on_success(context) -> None:
    """The run's note says which version is stable now and why; the alerts are the notifiers after this one."""
    note_and_log(context, ROLLBACK)


def _on_failure(context) -> None:
    """The run's note says why the rollback was refused or failed; the alerts are the notifiers after this one."""
    note_and_log(context, ROLLBACK_FAILED)


with DAG(
    dag_id="model_rollback",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Exclusive bounds: the form's number input would clamp a typed 0 or -1 into a ``minimum`` (see model_release).
    params={
        "model": Param(_MODELS[0] if _MODELS else None, type="string", enum=_MODELS, title="Model",
                       description="Which model's production to roll back."),
        "to_version": Param(None, type=["null", "integer"], exclusiveMinimum=0, title="Version to make stable",
                            description="A version on disk that once passed validation: the Models page (navigation "
                                        "bar) shows the current stable and offers exactly those; so does `pipeline "
                                        "status <model>`. Empty: the last good version before the current stable. "
                                        "A refused version is named with the ones allowed."),
        "reason": Param("on-call rollback", type="string", minLength=1, title="Reason",
                        description="Why: recorded with the rollback in the registry and sent with its alert."),
    },
    description="On-call: production's stable label back to a known-good version, in seconds",
    default_args={"owner": OWNER},
    doc_md=__doc__,
    tags=["on-call", "rollback"],
) as dag:

    @task(on_success_callback=[_on_success, *alert_notifiers(ROLLBACK)],
          on_failure_callback=[_on_failure, *alert_notifiers(ROLLBACK_FAILED)],
          inlets=[served_asset(model, PRODUCTION) for model in _MODELS])  # it reads and moves what production serves
    @refusals_end_quietly  # a refused rollback (no such version, never validated) is one ERROR line, no traceback
    def rollback(**context) -> dict:
        """Production's `stable` label -> the chosen version (loaded first, so no request fails); a live canary of
        the model is aborted first (split 0). Refused for a version that never passed validation."""
        prefer_classic_io()  # before the gRPC client loads grpc
        route_native_startup()  # TensorFlow's C++ start-up lines: logged at their level, not as stderr (ERROR)
        from pipeline import tasks

        params = context["params"]
        return tasks.rollback(params["model"], params["to_version"], context["run_id"], params["reason"])

    rollback()
