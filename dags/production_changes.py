"""Every change of what production serves, as it happens: one run per event of a ``<model>_production`` asset.

Changes made inside Airflow (a release's finalize or automatic rollback, ``model_rollback``, ``canary_monitor``)
are noted and alerted by their own DAG's callbacks. Changes made outside it (``pipeline rollback`` from a shell,
the automatic rollback of ``pipeline release``) reach Airflow only as the asset event the change posts: this DAG,
scheduled on those events, alerts the rollbacks among them through the same notifiers (SMTP, webhook).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, AssetAny, task

from pipeline.assets import PRODUCTION, served_asset
from pipeline.config import list_models
from pipeline.flow import OWNER
from pipeline.notify import ROLLBACK_OUTSIDE, alert_notifiers

_MODELS = list_models()

with DAG(
    dag_id="production_changes",
    schedule=AssetAny(*(served_asset(model, PRODUCTION) for model in _MODELS)),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    description="Runs on every change of what production serves; alerts rollbacks made outside Airflow",
    default_args={"owner": OWNER},
    doc_md=__doc__,
    tags=["on-call", "monitor"],
) as dag:

    @task(on_success_callback=alert_notifiers(ROLLBACK_OUTSIDE))
    def alert_rollbacks_made_outside_airflow(**context) -> list[dict]:
        """The rollbacks among this run's triggering events made outside Airflow (its XCom: what is alerted)."""
        from pipeline.assets import rollbacks_made_outside_airflow

        events = context["triggering_asset_events"]
        return rollbacks_made_outside_airflow([dict(e.extra or {}) for asset in events for e in events[asset]])

    alert_rollbacks_made_outside_airflow()
