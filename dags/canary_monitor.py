"""Scheduled watch of production, two tasks a model.

``probe_<model>`` replays the model's golden requests through the ``stable`` label. When a probe fails, the task
rolls that model back to its last good version on its own, records why in the registry, and fails so the run
shows red.

``drift_<model>`` judges the live traffic captured since its last run against the stable version's training
snapshot (input features, predicted classes, live accuracy where labels came back: :mod:`pipeline.monitoring`),
writes the run's report and figures, and fails (the ``drift`` alert) when the drift is sustained or the live
accuracy drops; where the model's config says ``monitoring.retrain_on_drift``, the labelled live requests go to
the ingest, which starts a retrain once there are enough. Interval: ``$PIPELINE_MONITOR_MINUTES`` (default 5; ``off``: no
schedule, by hand only). ``PIPELINE_SCHEDULES=off`` without ``PIPELINE_MONITOR_MINUTES`` turns it off too (a
sandbox that runs only its own triggers). The demo stack runs it on its schedule: releases are triggered by hand,
the monitor keeps watching what production serves.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from pipeline.assets import PRODUCTION, served_asset
from pipeline.config import list_models
from pipeline.flow import OWNER
from pipeline.notify import DRIFT, PROBE_FAILED, alert_notifiers, note_and_log
from pipeline.refusals import refusal_retry_policy, refusals_end_quietly
from pipeline.util.native_stderr import route_native_startup
from pipeline.wire.grpc_io import prefer_classic_io

_DEFAULT_MINUTES = 5
_OFF = "off"


def _interval_minutes() -> int | None:
    """``$PIPELINE_MONITOR_MINUTES`` (default 5); None when the monitor runs only by hand."""
    minutes = os.environ.get("PIPELINE_MONITOR_MINUTES")
    if minutes is None:
        return None if os.environ.get("PIPELINE_SCHEDULES", "on") == _OFF else _DEFAULT_MINUTES
    return None if minutes.strip().lower() in (_OFF, "0", "") else int(minutes)


_MINUTES = _interval_minutes()
_WHAT = ("Probes production's stable version of each model with its golden set (a failed probe rolls it back) and "
         "judges its live traffic for drift")
_DESCRIPTION = (f"{_WHAT}. Every {_MINUTES} min." if _MINUTES else
                f"NOT SCHEDULED (PIPELINE_MONITOR_MINUTES=off or PIPELINE_SCHEDULES=off): trigger it by hand. {_WHAT}.")


def _on_failure(context) -> None:
    """The run's note says which model's probe failed, why, and what production serves now; the alerts are the
    notifiers after this one."""
    note_and_log(context, PROBE_FAILED)


def _on_drift(context) -> None:
    """The run's note says which model drifts and how; the alerts are the notifiers after this one."""
    note_and_log(context, DRIFT)


with DAG(
    dag_id="canary_monitor",
    schedule=None if _MINUTES is None else pendulum.duration(minutes=_MINUTES),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    description=_DESCRIPTION,
    default_args={"owner": OWNER},
    doc_md=__doc__,
    tags=["monitor", "on-call"],
) as dag:
    for _model in list_models():

        # A failed probe (Refused) fails at once; a task that never ran (its process could not reach Airflow's API,
        # as when the stack is still starting) is tried again before anyone is told.
        @task(task_id=f"probe_{_model}", on_failure_callback=[_on_failure, *alert_notifiers(PROBE_FAILED)],
              inlets=[served_asset(_model, PRODUCTION)],  # it probes what production serves
              retries=2, retry_delay=pendulum.duration(seconds=30), retry_policy=refusal_retry_policy())
        @refusals_end_quietly  # a failed probe (rolled back by then) is one ERROR line, no traceback
        def probe(model: str = _model, **context) -> dict:
            """Replays the stable version's golden requests through production's `stable` label (a dead production
            server is started first). A failed probe rolls the model back to its last good version, then fails."""
            prefer_classic_io()  # before the gRPC client loads grpc
            route_native_startup()  # TensorFlow's C++ start-up lines: logged at their level, not as stderr (ERROR)
            from pipeline import tasks

            return tasks.monitor(model, context["run_id"])

        probe()

        # An alarm (DriftAlarm, a refusal) fails at once; a task that never ran is tried again, as the probe is.
        @task(task_id=f"drift_{_model}", on_failure_callback=[_on_drift, *alert_notifiers(DRIFT)],
              inlets=[served_asset(_model, PRODUCTION)],  # it judges the traffic production answered
              retries=2, retry_delay=pendulum.duration(seconds=30), retry_policy=refusal_retry_policy())
        @refusals_end_quietly
        def drift(model: str = _model, **context) -> dict:
            """Judges the live traffic captured since the last run for drift and accuracy; writes the report and
            the registry's figures; fails on an alarm (and asks the ingest for a retrain where configured)."""
            from pipeline import tasks

            return tasks.monitor_drift(model, context["run_id"])

        drift()
